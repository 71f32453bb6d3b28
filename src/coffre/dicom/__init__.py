"""The bounded, validating DICOM layer in front of pydicom (pure: bytes in, values out).

- ``uid``: PS3.5 9.1 UID rules;
- ``transfer_syntaxes``: what the archive accepts and how each syntax is encoded;
- ``sop_classes``: the Storage SOP Classes the archive knows;
- ``part10``: a bounded element scanner over PS3.10 files (lengths, nesting, deflate);
- ``instance``: ``parse_instance``, the one entry point of ingest validation;
- ``attributes``: the table of indexed attributes.
"""
