"""``coffre.logs``: the one logging set-up of ``coffre`` commands and DIMSE workers keeps
the DICOM libraries' messages (which quote element values: patient data) out of the logs."""

from __future__ import annotations

import subprocess
import sys


def test_configure_silences_the_dicom_libraries() -> None:
    code = (
        "import logging\n"
        "from coffre import logs\n"
        "logs.configure(logging.INFO)\n"
        "logging.getLogger('pydicom').error('PATIENT^NAME in pydicom')\n"
        "logging.getLogger('pynetdicom.dsutils').warning('PATIENT^NAME in pynetdicom')\n"
        "logging.getLogger('pynetdicom.assoc').error('pynetdicom error kept')\n"
        "logging.getLogger('coffre.net').info('coffre info kept')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "PATIENT^NAME" not in done.stderr
    assert "pynetdicom error kept" in done.stderr
    assert "coffre info kept" in done.stderr
