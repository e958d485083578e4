"""The SSH transport, by job: connect (socket, jump hosts, host keys), exec (commands with bounded
output and timeouts), facts (what a device says about itself), transport (push, run, fetch, stop)."""
