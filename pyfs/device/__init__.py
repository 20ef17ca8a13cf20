"""The device layer: every byte pyfs reads or writes goes through a Device.

| module | devices |
|---|---|
| base.py | Device (the interface: pread, pwrite, flush, discard, prefetch, counters), Wrapper |
| file.py | FileDevice (an image file), BlockDevice; open_device() picks one, locks it |
| mem.py | MemDevice: an image in memory |
| overlay.py | OverlayDevice (writes kept in memory: read-only mounts, fsck -n), StagedDevice (writes reach the image only once a mount or a repair has succeeded) |
| emulated.py | RecordingDevice (logs every write, flush and discard; rebuilds the image any power cut could leave), FaultyDevice (fails a chosen I/O call) |

pread/pwrite are the hot path: they validate the range, bump counters and call
straight into the kernel (or the bytearray); nothing else. The emulated devices
are a tested feature of their own (tests/t1_device.py), as littlefs's bd/ is:
the crash and fault tests of every level are built on them.
"""

from .base import Device, DeviceBusy, DeviceError, Wrapper
from .emulated import FaultyDevice, RecordingDevice
from .file import BlockDevice, FileDevice, open_device
from .mem import MemDevice
from .overlay import OverlayDevice, StagedDevice

__all__ = ["BlockDevice", "Device", "DeviceBusy", "DeviceError", "FaultyDevice", "FileDevice",
           "MemDevice", "OverlayDevice", "RecordingDevice", "StagedDevice", "Wrapper",
           "open_device"]
