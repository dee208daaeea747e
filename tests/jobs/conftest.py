"""Job tests use the S3 (moto) and MLflow server fixtures registered from tests.services."""
