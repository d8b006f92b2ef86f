# What `certbot renew` does to /etc/letsencrypt, played by busybox for the end-to-end test:
# with no certificate yet, the first is "issued" (as `certbot certonly` would); after that a
# renewal happens only when /etc/letsencrypt/.due exists: a new file under archive/, the live
# link moved to it.
set -eu
cd /etc/letsencrypt
if [ ! -e live/gitea.test/cert.pem ]; then
  mkdir -p archive/gitea.test live/gitea.test
  echo "cert 1" > archive/gitea.test/cert1.pem
  ln -s ../../archive/gitea.test/cert1.pem live/gitea.test/cert.pem
  echo "Successfully received certificate."
  exit 0
fi
if [ ! -e .due ]; then echo "No renewals were attempted."; exit 0; fi
n=$(( $(ls archive/gitea.test | wc -l) + 1 ))
echo "cert $n" > "archive/gitea.test/cert$n.pem"
ln -sfn "../../archive/gitea.test/cert$n.pem" live/gitea.test/cert.pem
rm .due
echo "Congratulations, all renewals succeeded"
