"""python/requirements.txt (what fanout_py needs) and tests/python/requirements.txt (what
.ci/run installs into .venv) are one compatible set: every package python/ pins is pinned
to the same version in the other file, and the interpreter running these tests has
exactly those versions installed."""

from __future__ import annotations

import re
import unittest
from importlib import metadata

from tests.harness import PYTHON_DIR, REPO_DIR

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins(path):
    """{normalised name: version} of a requirements file; a requirement that is not
    name==version fails (pip options, lines starting with "-", are left out)."""
    found = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = _PIN.match(line)
        if match is None:
            raise AssertionError(f"{path}:{number}: not a name==version pin: {raw!r}")
        found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(2)
    return found


class RequirementsTest(unittest.TestCase):
    def test_one_compatible_set(self):
        ours = pins(PYTHON_DIR / "requirements.txt")
        installed_by_ci = pins(REPO_DIR / "tests" / "python" / "requirements.txt")
        self.assertTrue(ours)
        for name, version in ours.items():
            self.assertEqual(
                installed_by_ci.get(name), version,
                f"python/requirements.txt pins {name}=={version}; tests/python/requirements.txt "
                f"must pin the same",
            )

    def test_the_interpreter_has_the_pinned_versions(self):
        for name, version in pins(PYTHON_DIR / "requirements.txt").items():
            try:
                installed = metadata.version(name)
            except metadata.PackageNotFoundError:
                self.fail(f"{name} is not installed: pip install -r python/requirements.txt")
            self.assertEqual(installed, version, f"{name} is {installed}, pinned {version}")


if __name__ == "__main__":
    unittest.main()
