"""Small Python scripts the host sends to a device over SSH (`python -c SOURCE ARGS...`), kept as files
so ruff and the Python 3.8 check see them. Each runs with the device's Python alone (no edgekit, no
numpy) and does its work only under `if __name__ == "__main__"`, so importing this package runs nothing.

- `agent_wrapper`: starts the agent in its own process group, with a pid file, unless a stop came first;
- `stop_agent`: stops that process group (SIGTERM, then SIGKILL after a grace period);
- `fallback_facts`: host, OS, CPU, Python and disk space when the agent cannot report facts;
- `sha256_file`: a file's sha256 where the device has neither sha256sum nor shasum.
"""
