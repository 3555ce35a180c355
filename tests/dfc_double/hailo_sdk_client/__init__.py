"""TEST DOUBLE of the Hailo Dataflow Compiler's `hailo_sdk_client` -- NOT the real DFC.

It has the call signatures the toolchain uses and fails like the real one would when called
carelessly (wrong node names, NCHW calibration data, unknown model-script commands, compile
before optimize). Everything it writes says "NOT DEPLOYABLE". Environment:
  HAILO_DOUBLE_VERSION   version reported (default: the installed wheel's, else 3.31.0+testdouble)
  HAILO_DOUBLE_FAIL_AT   parse|optimize|compile|save_har: raise at that step
  HAILO_DOUBLE_HANG_AT   parse|optimize|compile: stop making progress at that step (for stall tests)
  HAILO_DOUBLE_DELAY_S   seconds a step takes (with progress lines): "optimize=2,compile=0.5", or one
                         number for parse, optimize and compile (for scheduling tests and benchmarks)
"""

import os as _os

from hailo_sdk_client.exposed_definitions import InferenceContext, States
from hailo_sdk_client.runner import ClientRunner

DEFAULT_VERSION = "3.31.0+testdouble"


def _version():
    # The variable first: a test that sets it must get it also where a double wheel is installed
    # in the same environment (the README's native setup).
    if _os.environ.get("HAILO_DOUBLE_VERSION"):
        return _os.environ["HAILO_DOUBLE_VERSION"]
    try:
        from importlib import metadata

        return metadata.version("hailo_dataflow_compiler")
    except Exception:
        return DEFAULT_VERSION


__version__ = _version()
IS_TEST_DOUBLE = True

__all__ = ["ClientRunner", "InferenceContext", "States", "__version__"]
