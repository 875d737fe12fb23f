"""The generated protobuf modules under short names (generated code lives in api/gen)."""

from campaign_service.api.gen.campaign.v1 import campaign_service_pb2 as campaign_pb2
from campaign_service.api.gen.campaign.v1 import campaign_service_pb2_grpc as campaign_grpc

__all__ = ["campaign_grpc", "campaign_pb2"]
