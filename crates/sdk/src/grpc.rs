//! The gRPC services: Agones' `agones.dev.sdk.SDK` and Carrier's `carrier.dev.sdk.SDK`, both
//! on one port (gRPC routes by service name), over one [`Sdk`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use super::keys::KeyError;
use super::proto::{agones, carrier};
use super::writer::Sdk;
use super::{Calls, view};

/// Both services over one sidecar.
#[derive(Clone)]
pub struct Services {
    /// The sidecar.
    pub sdk: Arc<Sdk>,
    /// How calls are logged.
    pub calls: Calls,
}

fn invalid(e: KeyError) -> Status {
    Status::invalid_argument(e.to_string())
}

type Watch<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn watch<T: 'static>(sdk: &Sdk, f: fn(&crate::api::GameServer) -> T) -> Watch<T> {
    // The current object first, then every change.
    Box::pin(WatchStream::new(sdk.subscribe()).map(move |gs| Ok(f(&gs))))
}

#[tonic::async_trait]
impl agones::sdk_server::Sdk for Services {
    async fn ready(&self, _: Request<agones::Empty>) -> Result<Response<agones::Empty>, Status> {
        self.calls.log("Ready", "");
        self.sdk.ready();
        Ok(Response::new(agones::Empty {}))
    }

    async fn allocate(&self, _: Request<agones::Empty>) -> Result<Response<agones::Empty>, Status> {
        self.calls.log("Allocate", "");
        self.sdk.allocate();
        Ok(Response::new(agones::Empty {}))
    }

    async fn shutdown(&self, _: Request<agones::Empty>) -> Result<Response<agones::Empty>, Status> {
        self.calls.log("Shutdown", "");
        self.sdk.shutdown();
        Ok(Response::new(agones::Empty {}))
    }

    async fn health(
        &self,
        request: Request<tonic::Streaming<agones::Empty>>,
    ) -> Result<Response<agones::Empty>, Status> {
        let mut pings = request.into_inner();
        while let Some(ping) = pings.next().await {
            ping?;
            self.calls.ping();
            self.sdk.ping();
        }
        Ok(Response::new(agones::Empty {}))
    }

    async fn get_game_server(&self, _: Request<agones::Empty>) -> Result<Response<agones::GameServer>, Status> {
        self.calls.log("GetGameServer", "");
        Ok(Response::new(view::agones(&self.sdk.server())))
    }

    type WatchGameServerStream = Watch<agones::GameServer>;

    async fn watch_game_server(
        &self,
        _: Request<agones::Empty>,
    ) -> Result<Response<Self::WatchGameServerStream>, Status> {
        self.calls.log("WatchGameServer", "");
        Ok(Response::new(watch(&self.sdk, view::agones)))
    }

    async fn set_label(&self, request: Request<agones::KeyValue>) -> Result<Response<agones::Empty>, Status> {
        let kv = request.into_inner();
        self.calls.log("SetLabel", &format!("{}={}", kv.key, kv.value));
        self.sdk.set_label(&kv.key, &kv.value).map_err(invalid)?;
        Ok(Response::new(agones::Empty {}))
    }

    async fn set_annotation(&self, request: Request<agones::KeyValue>) -> Result<Response<agones::Empty>, Status> {
        let kv = request.into_inner();
        self.calls.log("SetAnnotation", &format!("{}={}", kv.key, kv.value));
        self.sdk.set_annotation(&kv.key, &kv.value).map_err(invalid)?;
        Ok(Response::new(agones::Empty {}))
    }

    async fn reserve(&self, request: Request<agones::Duration>) -> Result<Response<agones::Empty>, Status> {
        let seconds = request.into_inner().seconds;
        self.calls.log("Reserve", &format!("{seconds}s"));
        if seconds < 0 {
            return Err(Status::invalid_argument(format!("Reserve: seconds {seconds} must be 0 or more")));
        }
        self.sdk.reserve(seconds);
        Ok(Response::new(agones::Empty {}))
    }
}

#[tonic::async_trait]
impl carrier::sdk_server::Sdk for Services {
    async fn get_game_server(&self, _: Request<carrier::Empty>) -> Result<Response<carrier::GameServer>, Status> {
        self.calls.log("GetGameServer (Carrier)", "");
        Ok(Response::new(view::carrier(&self.sdk.server())))
    }

    type WatchGameServerStream = Watch<carrier::GameServer>;

    async fn watch_game_server(
        &self,
        _: Request<carrier::Empty>,
    ) -> Result<Response<Self::WatchGameServerStream>, Status> {
        self.calls.log("WatchGameServer (Carrier)", "");
        Ok(Response::new(watch(&self.sdk, view::carrier)))
    }

    async fn set_label(&self, request: Request<carrier::KeyValue>) -> Result<Response<carrier::Empty>, Status> {
        let kv = request.into_inner();
        self.calls.log("SetLabel (Carrier)", &format!("{}={}", kv.key, kv.value));
        self.sdk.set_label(&kv.key, &kv.value).map_err(invalid)?;
        Ok(Response::new(carrier::Empty {}))
    }

    async fn set_annotation(&self, request: Request<carrier::KeyValue>) -> Result<Response<carrier::Empty>, Status> {
        let kv = request.into_inner();
        self.calls.log("SetAnnotation (Carrier)", &format!("{}={}", kv.key, kv.value));
        self.sdk.set_annotation(&kv.key, &kv.value).map_err(invalid)?;
        Ok(Response::new(carrier::Empty {}))
    }

    async fn set_condition(&self, request: Request<carrier::KeyValue>) -> Result<Response<carrier::Empty>, Status> {
        let kv = request.into_inner();
        self.calls.log("SetCondition", &format!("{}={}", kv.key, kv.value));
        self.sdk.set_condition(&kv.key, &kv.value).map_err(invalid)?;
        Ok(Response::new(carrier::Empty {}))
    }
}

/// Serves both services on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    services: Services,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(agones::sdk_server::SdkServer::new(services.clone()))
        .add_service(carrier::sdk_server::SdkServer::new(services))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), shutdown)
        .await
}
