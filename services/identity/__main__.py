from cdp.runtime.server import run_service
from services.identity.main import build

run_service(build)
