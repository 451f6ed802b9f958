# docfold in three AWS regions: each region has its Kafka (MSK), state store (Aurora
# PostgreSQL), object storage (S3, replicated to the other regions), regional cache
# (ElastiCache Redis) and regional projection table; the projection table for
# `projection.writer = "leader"` and the lease table are DynamoDB global tables; a Global
# Accelerator sends editors to the nearest healthy region. Parsed (python-hcl2) and scanned
# (checkov) by the test `deploy`; findings are fixed, or skipped where they stand with the reason.

terraform {
  required_version = ">= 1.6"
  required_providers {
    aws = { source = "hashicorp/aws", version = "~> 5.60" }
  }
}

provider "aws" {
  alias  = "eu_west_1"
  region = "eu-west-1"
}

provider "aws" {
  alias  = "us_east_1"
  region = "us-east-1"
}

provider "aws" {
  alias  = "ap_southeast_1"
  region = "ap-southeast-1"
}

variable "networks" {
  description = "Per region: the VPC and the private subnets (one per availability zone) docfold runs in."
  type = map(object({
    vpc_id     = string
    subnet_ids = list(string)
    cidr       = string
  }))
}

variable "jobs_endpoints" {
  description = "Per region: the ARN of the load balancer in front of the region's editors' API."
  type        = map(string)
}

module "eu_west_1" {
  source    = "./region"
  providers = { aws = aws.eu_west_1 }
  region    = "eu-west-1"
  network   = var.networks["eu-west-1"]
  peers     = ["us-east-1", "ap-southeast-1"]
}

module "us_east_1" {
  source    = "./region"
  providers = { aws = aws.us_east_1 }
  region    = "us-east-1"
  network   = var.networks["us-east-1"]
  peers     = ["eu-west-1", "ap-southeast-1"]
}

module "ap_southeast_1" {
  source    = "./region"
  providers = { aws = aws.ap_southeast_1 }
  region    = "ap-southeast-1"
  network   = var.networks["ap-southeast-1"]
  peers     = ["eu-west-1", "us-east-1"]
}
