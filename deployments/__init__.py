"""Deployment helpers of sunday-release (the deployments themselves are declared in prefect.yaml)."""
