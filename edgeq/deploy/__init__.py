"""Getting a bundle onto a device and checking it runs there (torch-free: this runs on the device).

`pack`/`unpack` make one verified file of a bundle; `doctor` compares the host with what a bundle
or target needs; `push` copies a bundle over SSH and `remote_bench` runs `edgeq bench` on the device.
"""
