# One VPC with one public subnet: a single host behind an Elastic IP needs no more.

resource "aws_vpc" "main" {
  #checkov:skip=CKV2_AWS_11:Flow logs would cost more than the host itself; the security group admits only 22 (restricted), 80 and 443.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = {
    Name = "${var.name}-vpc"
  }
}

# The default security group of the VPC admits nothing, so nothing can land in it by mistake.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.main.id
}

resource "aws_subnet" "public" {
  vpc_id            = aws_vpc.main.id
  cidr_block        = var.public_subnet_cidr
  availability_zone = var.availability_zone != "" ? var.availability_zone : "${var.region}a"

  # The host gets its public address from the Elastic IP, never automatically.
  map_public_ip_on_launch = false

  tags = {
    Name = "${var.name}-public"
  }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id

  tags = {
    Name = "${var.name}-igw"
  }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }

  tags = {
    Name = "${var.name}-public"
  }
}

resource "aws_route_table_association" "public" {
  subnet_id      = aws_subnet.public.id
  route_table_id = aws_route_table.public.id
}

resource "aws_security_group" "host" {
  name        = "${var.name}-host"
  description = "Gitea host: SSH from the operators only, HTTP and HTTPS from anywhere"
  vpc_id      = aws_vpc.main.id

  tags = {
    Name = "${var.name}-host"
  }
}

resource "aws_vpc_security_group_ingress_rule" "ssh" {
  for_each = toset(var.ssh_allowed_cidrs)

  security_group_id = aws_security_group.host.id
  description       = "SSH from ${each.value}"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  #checkov:skip=CKV_AWS_260:Let's Encrypt's HTTP-01 challenge comes from anywhere on port 80; nginx only answers it and redirects to HTTPS.
  security_group_id = aws_security_group.host.id
  description       = "HTTP: Let's Encrypt HTTP-01 challenges and the redirect to HTTPS"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  security_group_id = aws_security_group.host.id
  description       = "HTTPS: Gitea behind nginx"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "all" {
  #checkov:skip=CKV_AWS_382:The host must reach package mirrors, container registries, Let's Encrypt, S3 and SES; their addresses are not fixed.
  security_group_id = aws_security_group.host.id
  description       = "Outbound: updates, registries, Let's Encrypt, S3, SES"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}
