from cdp.runtime.server import run_service
from services.ingest.main import build

run_service(build)
