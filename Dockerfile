# The agent image. docker-compose.yml mounts the config at /etc/agent/config.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The package with the monitoring stack it ships (agent/stack/templates); setup.py records the revision,
# "unknown" here (no .git in the build context).
COPY pyproject.toml setup.py README.md LICENSE ./
COPY agent ./agent
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/agent --create-home agent

# The agent's home and working directory (a volume in docker-compose.yml). A config's relative paths resolve
# against the config file's directory, so examples/docker.yaml gives state_dir and log_dir under here.
WORKDIR /var/lib/agent
USER agent
EXPOSE 9469

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9469/-/healthy', timeout=2)"]

ENTRYPOINT ["agent"]
CMD ["run", "--config", "/etc/agent/config.yaml"]
