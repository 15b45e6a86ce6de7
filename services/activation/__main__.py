from cdp.runtime.server import run_service
from services.activation.main import build

run_service(build)
