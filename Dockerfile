# One image for the five services; compose.yaml gives each its own command.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY protos protos
COPY tools tools
COPY cdp cdp
COPY services services
RUN pip install --no-cache-dir --no-deps . && python tools/gen_protos.py
USER nobody
EXPOSE 50051 50052 50053 50054 50055 8088
