"""The core: ECR logic with no Airflow import at all (checked by import-linter and a test).

Promotion, hygiene, tag waits and the shared poller are plain functions over a boto3 (or
aiobotocore) ECR client; every ECR call goes through :mod:`airflow_ecr_retag.core.ecr`. The
Airflow layer (operators, sensors, triggers, links) turns the core's errors into Airflow's
in one place, :mod:`airflow_ecr_retag.exceptions`.
"""
