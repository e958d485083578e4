"""edgekit.runtime: the device-side agent (plan in, result out), shipped to devices as a zipapp.

Imports nothing from the rest of edgekit and runs on Python 3.8+ with numpy, OpenCV and one engine.
Submodules are imported on use, so importing this package costs nothing.
"""
