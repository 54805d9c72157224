"""The offline stand-in for devstack (examples/fake-devstack/) as a git repository, for the demo and the tests.

from examples.fake_devstack import make_fake_devstack_repo
repo = make_fake_devstack_repo(tmp_path / "devstack")      # then "devstack_repo": repo in a config
"""

import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "fake-devstack"
EXECUTABLES = ("stack.sh", "unstack.sh", "tools/fake-service", "tools/fake_openstack.py")
FAILURE_POINT = "# FAKE-DEVSTACK: failure point\n"
# Fixed author, committer and dates: the same files always make the same commit.
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "fake-devstack",
    "GIT_AUTHOR_EMAIL": "fake-devstack@example.invalid",
    "GIT_COMMITTER_NAME": "fake-devstack",
    "GIT_COMMITTER_EMAIL": "fake-devstack@example.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
}


def make_fake_devstack_repo(dest, branch="master", fail_with=None):
    """A git repository at `dest` (new or empty) holding the stand-in on `branch`; returns its path.

    fail_with=N makes a variant whose stack.sh prints what it read and then exits with N, for failure tests.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} exists and is not empty; give a new folder for the fake devstack repo")
    shutil.copytree(SOURCE, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in EXECUTABLES:
        os.chmod(dest / name, 0o755)
    if fail_with is not None:
        stack = dest / "stack.sh"
        text = stack.read_text()
        if FAILURE_POINT not in text:
            raise RuntimeError(f"{SOURCE}/stack.sh has lost its failure point line {FAILURE_POINT.strip()!r}")
        stack.write_text(
            text.replace(
                FAILURE_POINT,
                f'echo "fake-devstack: failing on purpose with exit code '
                f'{int(fail_with)}" >&2\nexit {int(fail_with)}\n',
            )
        )
    env = {**os.environ, **_GIT_ENV}
    for argv in (
        ["git", "init", "-q", "-b", branch],
        ["git", "add", "-A"],
        ["git", "commit", "-q", "-m", "fake-devstack: an offline stand-in for devstack"],
    ):
        subprocess.run(argv, cwd=dest, env=env, check=True, capture_output=True, text=True)
    return str(dest)
