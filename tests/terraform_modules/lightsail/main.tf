# Stands in for terraform/lightsail in tests of the run machinery: the same variables and
# outputs, made of Terraform's built-in terraform_data (no provider, no cloud). Each host
# made or destroyed is written to ../ledger (one line each, from the workspace), after
# sleeping as long as ../delay says, so a test can count them and kill a run mid-apply.

variable "name" { type = string }
variable "region" { type = string }
variable "availability_zone" { type = string }
variable "blueprint_id" { type = string }
variable "bundle_id" { type = string }
variable "host_count" { type = number }
variable "ssh_public_key" { type = string }
variable "user_data" { type = string }
variable "public_ports" { type = any }
variable "load_balancer_count" { type = number }
variable "app_port" { type = number }
variable "health_check_path" { type = string }
variable "tags" { type = map(string) }

locals {
  # The hosts' addresses: ../addresses when a test has real hosts to give (space-separated),
  # else addresses that answer nothing.
  given     = fileexists("${path.cwd}/../addresses") ? split(" ", trimspace(file("${path.cwd}/../addresses"))) : []
  addresses = [for i in range(var.host_count) : i < length(local.given) ? local.given[i] : "127.0.1.${i + 10}"]
}

resource "terraform_data" "hosts" {
  count = var.host_count
  input = local.addresses[count.index]
  # As on Lightsail, where an instance's name is fixed: a new name replaces the host.
  triggers_replace = "${var.name}-${count.index}"

  provisioner "local-exec" {
    command = "sleep $(cat ../delay 2>/dev/null || echo 0); echo \"made ${var.name}-${count.index}\" >> ../ledger"
  }
  provisioner "local-exec" {
    when    = destroy
    command = "echo \"destroyed ${self.output}\" >> ../ledger"
  }
}

output "public_addresses" { value = terraform_data.hosts[*].output }
output "private_addresses" { value = [] }
output "load_balancer_address" { value = var.load_balancer_count > 0 ? "198.51.100.1" : null }
