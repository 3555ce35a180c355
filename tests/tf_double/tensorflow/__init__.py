"""TEST DOUBLE of the few TensorFlow calls the GPU hang probe makes (pipeline.host.hang_probe) --
NOT TensorFlow. It answers like a healthy card: one GPU listed, the matmul returns at once. Put
tests/tf_double on a stage's PYTHONPATH to run GPU builds on a machine without a GPU or TF (the
GPU gate is fed recorded NVML answers in those tests). Anything else fails loudly.
"""

import contextlib
from types import SimpleNamespace

__version__ = "0.0.0+testdouble"


class _Tensor(float):
    pass


def _list_physical_devices(kind):
    if kind != "GPU":
        raise ValueError(f"tf double: only list_physical_devices('GPU') is modelled, not {kind!r}")
    return [SimpleNamespace(name="/physical_device:GPU:0", device_type="GPU")]


@contextlib.contextmanager
def device(name):
    if not str(name).startswith("/GPU:"):
        raise ValueError(f"tf double: device {name!r} is not a GPU")
    yield


def _stateless_normal(shape, seed):
    if len(shape) != 2 or len(seed) != 2:
        raise ValueError("tf double: stateless_normal takes a 2-d shape and a 2-int seed")
    return _Tensor(shape[0] * shape[1])


config = SimpleNamespace(list_physical_devices=_list_physical_devices)
random = SimpleNamespace(stateless_normal=_stateless_normal)
linalg = SimpleNamespace(matmul=lambda a, b: _Tensor(float(a) * float(b)))


def reduce_sum(tensor):
    return _Tensor(tensor)
