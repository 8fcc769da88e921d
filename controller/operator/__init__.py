"""The operator process: kopf handlers, configuration, metrics, logging and retry timing."""
