FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY swim_as ./swim_as
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system swim-as
USER swim-as
EXPOSE 8443
CMD ["swim-as", "serve", "--config", "/etc/swim-as/swim-as.toml"]
