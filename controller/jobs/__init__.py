"""Long work outside the reconcile pass: recorded before it starts, found again after a restart.

`hookruns`: post-deploy hooks as detached runs on the workload's machine. Terraform runs
are recorded the same way by `controller.drivers.terraform`.
"""
