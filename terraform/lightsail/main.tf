# Hosts and a load balancer for one Project on AWS Lightsail. Inputs: controller/specs/terraform.py.
# Credentials reach the provider as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY only.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region
}

variable "region" { type = string }
variable "name" {
  type        = string
  description = "Prefix of every name: codeb-<namespace>-<project>."
}
variable "availability_zone" { type = string }
variable "blueprint_id" { type = string }
variable "bundle_id" { type = string }
variable "host_count" { type = number }
variable "ssh_public_key" {
  type        = string
  description = "The operator's key: it logs in to deliver Quadlet units."
}
variable "user_data" {
  type        = string
  description = "cloud-init: podman with Quadlet, nothing else listening."
}
variable "public_ports" {
  type        = list(object({ port = number, cidrs = list(string), ipv6_cidrs = list(string) }))
  description = "TCP ports open to the internet, and from where. Nothing else is open."
}
variable "load_balancer_count" {
  type        = number
  description = "1 with a load balancer, else 0."
}
variable "app_port" {
  type        = number
  description = "The application's host port: the balancer's backend."
}
variable "health_check_path" {
  type        = string
  description = "Lightsail balancers probe a path only; interval and thresholds are fixed by AWS."
}
variable "tags" { type = map(string) }

resource "aws_lightsail_key_pair" "operator" {
  name       = var.name
  public_key = var.ssh_public_key
}

resource "aws_lightsail_instance" "hosts" {
  count             = var.host_count
  name              = "${var.name}-${count.index}"
  availability_zone = var.availability_zone
  blueprint_id      = var.blueprint_id
  bundle_id         = var.bundle_id
  key_pair_name     = aws_lightsail_key_pair.operator.name
  user_data         = var.user_data
  tags              = var.tags
}

resource "aws_lightsail_static_ip" "hosts" {
  count = var.host_count
  name  = "${var.name}-${count.index}"
}

resource "aws_lightsail_static_ip_attachment" "hosts" {
  count          = var.host_count
  static_ip_name = aws_lightsail_static_ip.hosts[count.index].name
  instance_name  = aws_lightsail_instance.hosts[count.index].name
}

# Replaces the instance's default ports: exactly these are open.
resource "aws_lightsail_instance_public_ports" "hosts" {
  count         = var.host_count
  instance_name = aws_lightsail_instance.hosts[count.index].name

  dynamic "port_info" {
    for_each = var.public_ports
    content {
      protocol   = "tcp"
      from_port  = port_info.value.port
      to_port    = port_info.value.port
      cidrs      = port_info.value.cidrs
      ipv6_cidrs = port_info.value.ipv6_cidrs
    }
  }
}

resource "aws_lightsail_lb" "front" {
  count             = var.load_balancer_count
  name              = var.name
  health_check_path = var.health_check_path
  instance_port     = var.app_port
  tags              = var.tags
}

resource "aws_lightsail_lb_attachment" "hosts" {
  count         = var.load_balancer_count * var.host_count
  lb_name       = aws_lightsail_lb.front[0].name
  instance_name = aws_lightsail_instance.hosts[count.index].name
}

output "public_addresses" {
  value = aws_lightsail_static_ip.hosts[*].ip_address
}
output "private_addresses" {
  value = aws_lightsail_instance.hosts[*].private_ip_address
}
output "load_balancer_address" {
  value = aws_lightsail_lb.front[*].dns_name
}
