# Stands in for terraform/vultr-kubernetes in tests: the same variables and outputs, made of
# Terraform's built-in terraform_data (no provider, no cloud). The "cluster" is whatever API server
# ../kubeconfig reaches (a test's second local cluster), given base64 as Vultr gives kube_config;
# ../endpoint is its address. Each cluster made or destroyed is a line of ../ledger.

variable "name" { type = string }
variable "region" { type = string }
variable "kubernetes_version" { type = string }
variable "plan" { type = string }
variable "node_count" { type = number }

resource "terraform_data" "cluster" {
  input = {
    endpoint    = trimspace(file("${path.cwd}/../endpoint"))
    kube_config = filebase64("${path.cwd}/../kubeconfig")
  }
  # As on Vultr, where a cluster's label and region are fixed: a new one replaces it.
  triggers_replace = [var.name, var.region]

  provisioner "local-exec" {
    command = "echo \"made ${var.name} ${var.kubernetes_version} ${var.plan} x${var.node_count}\" >> ../ledger"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "echo \"destroyed ${self.output.endpoint}\" >> ../ledger"
  }
}

output "endpoint" { value = terraform_data.cluster.output.endpoint }
output "kube_config" {
  value     = terraform_data.cluster.output.kube_config
  sensitive = true
}
