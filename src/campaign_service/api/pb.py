"""The generated protobuf modules under short names (generated code lives in api/gen)."""

from campaign_service.api.gen.auth.v1 import auth_pb2
from campaign_service.api.gen.auth.v1 import auth_pb2_grpc as auth_grpc
from campaign_service.api.gen.campaign.v1 import campaign_service_pb2 as campaign_pb2
from campaign_service.api.gen.campaign.v1 import campaign_service_pb2_grpc as campaign_grpc

__all__ = ["auth_grpc", "auth_pb2", "campaign_grpc", "campaign_pb2"]
