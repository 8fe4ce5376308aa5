//! `switchboard.im.v1.ImService`: Send, ListAccounts, StreamMessages, behind an
//! optional bearer token.

use std::pin::Pin;

use futures::Stream;
use switchboard_bus::Secret;
use switchboard_proto::im::v1::im_service_server::{ImService, ImServiceServer};
use switchboard_proto::im::v1::{
    ListAccountsReply, ListAccountsRequest, Message, SendReply, SendRequest, StreamMessagesRequest,
};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::account::Accounts;

/// The gRPC service over the accounts.
#[derive(Debug, Clone)]
pub struct ImGrpc {
    accounts: Accounts,
    shutdown: CancellationToken,
}

/// Checks `authorization: Bearer <token>` when a token is configured.
#[derive(Debug, Clone)]
pub struct BearerAuth {
    token: Option<Secret>,
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(given) if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("bad bearer token")),
            None => Err(Status::unauthenticated("missing authorization: Bearer <token>")),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The service wrapped in its auth check, ready for `Routes::new`. Open
/// message streams end when `shutdown` is cancelled, so they do not hold the
/// server's graceful shutdown.
pub fn server(
    accounts: Accounts,
    token: Option<Secret>,
    shutdown: CancellationToken,
) -> InterceptedService<ImServiceServer<ImGrpc>, BearerAuth> {
    ImServiceServer::with_interceptor(ImGrpc { accounts, shutdown }, BearerAuth { token })
}

#[tonic::async_trait]
impl ImService for ImGrpc {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        self.accounts
            .send(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.to_status())
    }

    async fn list_accounts(
        &self,
        _request: Request<ListAccountsRequest>,
    ) -> Result<Response<ListAccountsReply>, Status> {
        Ok(Response::new(ListAccountsReply {
            accounts: self.accounts.list(),
        }))
    }

    type StreamMessagesStream = Pin<Box<dyn Stream<Item = Result<Message, Status>> + Send + 'static>>;

    async fn stream_messages(
        &self,
        request: Request<StreamMessagesRequest>,
    ) -> Result<Response<Self::StreamMessagesStream>, Status> {
        let wanted = request.into_inner().accounts;
        for id in &wanted {
            if self.accounts.get(id).is_none() {
                return Err(Status::not_found(format!("unknown account {id:?}")));
            }
        }
        let stream = BroadcastStream::new(self.accounts.subscribe()).filter_map(move |item| match item {
            Ok(message) if wanted.is_empty() || wanted.contains(&message.account) => Some(Ok(message)),
            Ok(_) => None,
            Err(lagged) => Some(Err(Status::data_loss(format!("stream fell behind: {lagged}")))),
        });
        Ok(Response::new(Box::pin(futures::StreamExt::take_until(
            stream,
            self.shutdown.clone().cancelled_owned(),
        ))))
    }
}
