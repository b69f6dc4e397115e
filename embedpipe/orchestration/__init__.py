"""Orchestration: the glue between KFP components and the step functions, the local runner, pre-flight checks,
the Kubernetes training-job launcher and the pipeline compiler."""
