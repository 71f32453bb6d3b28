"""The process's logging set-up, the same for ``coffre`` commands and DIMSE workers.

The DICOM libraries quote element values (patient data, or a sender's hostile text) in
their log messages and warnings, so they are kept out of the logs (no patient data in
logs, docs/architecture.md "Logs and patient data").
"""

from __future__ import annotations

import logging
import sys
import warnings

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: int = logging.WARNING) -> None:
    """Log to stderr at ``level``; pydicom silenced, pynetdicom at ERROR and above."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    logging.getLogger("pynetdicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
