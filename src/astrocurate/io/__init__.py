"""The project's files: FITS mosaics, the cutout store, exports, atomic writes and leases."""
