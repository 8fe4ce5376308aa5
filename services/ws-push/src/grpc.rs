//! gRPC `PushService`: the site API's operations, authorised by the same API keys
//! (metadata `authorization: Bearer <key>` or `x-api-key: <key>`).

use std::sync::Arc;

use switchboard_proto::push::v1::push_service_server::PushService;
use switchboard_proto::push::v1::{
    ChannelPresenceReply, ChannelPresenceRequest, DisconnectReply, DisconnectRequest, ListOnlineReply,
    ListOnlineRequest, PresenceReply, PresenceRequest, PublishBatchReply, PublishBatchRequest, PublishReply,
    PublishRequest,
};
use tonic::{Request, Response, Status};

use crate::node::{ApiError, Node};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct Grpc {
    node: Arc<Node>,
}

impl Grpc {
    /// Serves `node`'s operations.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node }
    }

    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let metadata = request.metadata();
        let bearer = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let key = bearer.or_else(|| metadata.get("x-api-key").and_then(|v| v.to_str().ok()));
        if self.node.api_key_ok(key) {
            Ok(())
        } else {
            Err(Status::unauthenticated("missing or wrong API key"))
        }
    }
}

fn status(error: ApiError) -> Status {
    match error {
        ApiError::Unauthenticated => Status::unauthenticated(error.to_string()),
        ApiError::Invalid(message) => Status::invalid_argument(message),
        ApiError::Unavailable(message) => Status::unavailable(message),
    }
}

#[tonic::async_trait]
impl PushService for Grpc {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<PublishReply>, Status> {
        self.check(&request)?;
        let mut replies = self.node.publish(vec![request.into_inner()]).await.map_err(status)?;
        let reply = replies.pop().ok_or_else(|| Status::unavailable("no ack"))?;
        Ok(Response::new(reply))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchReply>, Status> {
        self.check(&request)?;
        let items = self.node.publish(request.into_inner().items).await.map_err(status)?;
        Ok(Response::new(PublishBatchReply { items }))
    }

    async fn presence(&self, request: Request<PresenceRequest>) -> Result<Response<PresenceReply>, Status> {
        self.check(&request)?;
        self.node
            .presence_of(&request.into_inner().users)
            .map(Response::new)
            .map_err(status)
    }

    async fn list_online(&self, request: Request<ListOnlineRequest>) -> Result<Response<ListOnlineReply>, Status> {
        self.check(&request)?;
        let request = request.into_inner();
        let page = request.page.unwrap_or_default();
        Ok(Response::new(self.node.list_online(
            request.admins_only,
            &page.cursor,
            page.page_size,
        )))
    }

    async fn channel_presence(
        &self,
        request: Request<ChannelPresenceRequest>,
    ) -> Result<Response<ChannelPresenceReply>, Status> {
        self.check(&request)?;
        self.node
            .channel_presence(&request.into_inner().channel)
            .map(Response::new)
            .map_err(status)
    }

    async fn disconnect(&self, request: Request<DisconnectRequest>) -> Result<Response<DisconnectReply>, Status> {
        self.check(&request)?;
        self.node
            .disconnect(request.into_inner())
            .await
            .map(Response::new)
            .map_err(status)
    }
}
