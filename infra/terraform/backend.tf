# Remote state in S3 with a lock file, configured at `terraform init` so that no account-specific
# name is committed: copy backend.hcl.example to backend.hcl, fill it in, then
#   terraform init -backend-config=backend.hcl
# The state bucket is created once by hand (docs/deploy.md) and is not managed here: a stack must
# not own the bucket that holds its own state.
terraform {
  backend "s3" {}
}
