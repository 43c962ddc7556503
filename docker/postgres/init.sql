-- One Postgres for Airflow's metadata and MLflow's tracking store (separate databases).
CREATE DATABASE airflow;
CREATE DATABASE mlflow;
