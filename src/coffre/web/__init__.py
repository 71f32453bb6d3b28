"""HTTP adapter: FastAPI application (health check now; DICOMweb later)."""
