"""One ``APIRouter`` per area of the service."""
