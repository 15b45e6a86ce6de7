from cdp.runtime.server import run_service
from services.segments.main import build

run_service(build)
