import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_config_reference_is_up_to_date():
    proc = subprocess.run([sys.executable, "tools/config_reference.py", "--check"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_gives_the_two_commands_and_ci_calls_make_test():
    readme = open(os.path.join(REPO, "README.md")).read()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in open(os.path.join(REPO, ".ci", "run")).read()
