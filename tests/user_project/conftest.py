# The plugin must load before anything imports Airflow: it points Airflow at a throwaway home.
pytest_plugins = ["airflow_ecr_retag.testing.pytest_plugin"]
