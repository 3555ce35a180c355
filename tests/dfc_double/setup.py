"""Version of the test double: HAILO_DOUBLE_VERSION (e.g. 5.1.0+testdouble), default 3.31.0+testdouble.

The local label `+testdouble` is required so nothing can mistake this wheel for the real DFC.
"""
import os

from setuptools import setup

version = os.environ.get("HAILO_DOUBLE_VERSION", "3.31.0+testdouble")
if "+testdouble" not in version:
    raise SystemExit(f"HAILO_DOUBLE_VERSION={version!r} must end in +testdouble")
setup(version=version)
