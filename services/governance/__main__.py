from cdp.runtime.server import run_service
from services.governance.main import build

run_service(build)
