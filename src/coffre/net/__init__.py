"""DIMSE adapter (PS3.7, PS3.8): the pynetdicom listener and its status mapping."""
