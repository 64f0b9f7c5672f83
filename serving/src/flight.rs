//! Arrow Flight SQL: ADBC, JDBC and ODBC Flight SQL drivers read answers as Arrow batches, with
//! no conversion.
//!
//! ```text
//!  listener ─► a connection slot (at most `[sql] max_connections`; past it: closed)
//!           ─► TLS if configured (tonic) ─► gRPC, each call within the query timeout
//!  GetFlightInfo(CommandStatementQuery sql) ─► token? ─► SqlEngine::describe ─► schema + a ticket
//!                                                        naming the SQL (no state kept here)
//!  DoGet(ticket) ─► token? ─► SqlEngine::answer (the same runtime, pool, row cap and timeout as
//!                  POST /v1/sql) ─► Arrow IPC batches
//!  GetSqlInfo ─► the server's name, version, read-only
//! ```
//!
//! A ticket holds the statement itself, so a ticket is answered by whichever process gets it,
//! against the publication current then. The token is the `authorization: Bearer` header of
//! each call, checked as the HTTP API checks it.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetSqlInfo, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse,
    IpcMessage, SchemaAsIpc, Ticket,
};
use axum::http::Method;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::sql::{self, Dialect, SqlEngine, Statement};
use crate::tls::Tls;

/// What the door serves and whom it lets in.
#[derive(Debug, Clone)]
pub struct FlightDoor {
    pub engine: SqlEngine,
    pub access: Access,
    pub tls: Option<Tls>,
    /// Open connections at most.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    pub idle_timeout: Duration,
}

static SQL_INFO: LazyLock<SqlInfoData> = LazyLock::new(|| {
    let mut builder = SqlInfoDataBuilder::new();
    builder.append(SqlInfo::FlightSqlServerName, "Tandem");
    builder.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    builder.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
    builder.append(SqlInfo::FlightSqlServerReadOnly, true);
    builder.append(SqlInfo::FlightSqlServerSql, true);
    builder.append(SqlInfo::FlightSqlServerSubstrait, false);
    builder.append(SqlInfo::FlightSqlServerTransaction, 0_i32);
    builder.append(SqlInfo::FlightSqlServerCancel, false);
    builder.append(SqlInfo::FlightSqlServerStatementTimeout, 0_i32);
    builder
        .build()
        .unwrap_or_else(|e| unreachable!("constant SQL info: {e}"))
});

/// A refused or failed query as a gRPC status.
fn status(error: &sql::Error) -> Status {
    let message = error.to_string();
    match error {
        sql::Error::Syntax { .. }
        | sql::Error::Plan { .. }
        | sql::Error::ReadOnly(_)
        | sql::Error::Execution(_) => Status::invalid_argument(message),
        sql::Error::Timeout(_) => Status::deadline_exceeded(message),
        sql::Error::Memory { .. } | sql::Error::TooManyRows(_) | sql::Error::Busy(_) => {
            Status::resource_exhausted(message)
        }
        sql::Error::Internal(_) => Status::internal(message),
    }
}

/// The Flight SQL service.
#[derive(Debug, Clone)]
pub struct Service {
    engine: SqlEngine,
    access: Access,
}

impl Service {
    pub fn new(engine: SqlEngine, access: Access) -> Self {
        Self { engine, access }
    }

    /// The call's bearer token, checked as the HTTP API's `POST /v1/sql` checks it.
    fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.access.is_open() {
            return Ok(());
        }
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            });
        self.access
            .decide(&Method::POST, "/v1/sql", presented)
            .map(|_| ())
            .map_err(|denied| {
                metrics::counter!("tandem_flight_refused_total", "reason" => "token").increment(1);
                Status::unauthenticated(format!("{denied:?}"))
            })
    }

    fn request(sql: &str) -> sql::Request {
        sql::Request::new(Statement::Text(sql.to_owned()), Dialect::Standard)
    }

    /// The flight of a statement: its schema and one endpoint whose ticket names it.
    async fn flight_info(
        &self,
        sql: &str,
        descriptor: FlightDescriptor,
    ) -> Result<Response<FlightInfo>, Status> {
        let described = self
            .engine
            .describe(Self::request(sql))
            .await
            .map_err(|e| status(&e))?;
        let ticket = TicketStatementQuery {
            statement_handle: sql.as_bytes().to_vec().into(),
        };
        let endpoint =
            FlightEndpoint::new().with_ticket(Ticket::new(ticket.as_any().encode_to_vec()));
        let info = FlightInfo::new()
            .try_with_schema(&described.schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(endpoint)
            .with_descriptor(descriptor)
            .with_ordered(true);
        Ok(Response::new(info))
    }

    /// Runs a statement and streams its answer.
    async fn answer(
        &self,
        sql: &str,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let answer = self
            .engine
            .answer(Self::request(sql))
            .await
            .map_err(|e| status(&e))?;
        let batches = futures::stream::iter(answer.batches.into_iter().map(Ok));
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(answer.schema)
            .build(batches)
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }
}

fn text(bytes: &[u8]) -> Result<&str, Status> {
    std::str::from_utf8(bytes).map_err(|_| Status::invalid_argument("the statement is not UTF-8"))
}

#[tonic::async_trait]
impl FlightSqlService for Service {
    type FlightService = Service;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // Nothing to exchange: every call carries its token.
        self.check(&request)?;
        let response = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(response)
        }))))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        self.flight_info(&query.query, request.into_inner()).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        self.answer(text(&ticket.statement_handle)?).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        self.check(&request)?;
        let described = self
            .engine
            .describe(Self::request(&query.query))
            .await
            .map_err(|e| status(&e))?;
        if !described.params.is_empty() {
            return Err(Status::unimplemented(
                "parameters of prepared statements are not supported over Flight SQL",
            ));
        }
        let options = IpcWriteOptions::default();
        let schema = |s: &Schema| -> Result<_, Status> {
            let IpcMessage(bytes) = SchemaAsIpc::new(s, &options).try_into().map_err(
                |e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()),
            )?;
            Ok(bytes)
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: query.query.into_bytes().into(),
            dataset_schema: schema(&described.schema)?,
            parameter_schema: schema(&Schema::empty())?,
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // A handle is its statement: nothing is kept to release.
        self.check(&request)
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let sql = text(&query.prepared_statement_handle)?.to_owned();
        self.flight_info(&sql, request.into_inner()).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        self.answer(text(&query.prepared_statement_handle)?).await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.check(&request)?;
        let descriptor = request.into_inner();
        let ticket = Ticket::new(query.as_any().encode_to_vec());
        let info = FlightInfo::new()
            .try_with_schema(query.into_builder(&SQL_INFO).schema().as_ref())
            .map_err(|e| Status::internal(e.to_string()))?
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_descriptor(descriptor);
        Ok(Response::new(info))
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        let builder = query.into_builder(&SQL_INFO);
        let schema = builder.schema();
        let batch = builder.build();
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn do_get_fallback(
        &self,
        request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        self.check(&request)?;
        Err(Status::unimplemented(format!(
            "{} is not supported",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// An accepted connection holding its slot until it closes.
struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// Serves Flight SQL on `listener` until `stop` fires.
pub async fn serve(
    listener: TcpListener,
    door: FlightDoor,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let slots = Arc::new(Semaphore::new(door.max_connections));
    tracing::info!(
        addr = ?listener.local_addr().ok(),
        tls = door.tls.is_some(),
        max_connections = door.max_connections,
        "Flight SQL serving"
    );
    let incoming = futures::stream::unfold(listener, move |listener| {
        let slots = Arc::clone(&slots);
        async move {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        tracing::warn!(%err, "Flight SQL accept error");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Past the cap a connection is closed at once.
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    metrics::counter!("tandem_flight_refused_total", "reason" => "connections")
                        .increment(1);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let counted = Counted {
                    stream,
                    _slot: slot,
                };
                return Some((Ok::<_, std::io::Error>(counted), listener));
            }
        }
    })
    .boxed();
    let timeout = door.engine.limits().timeout + door.idle_timeout;
    let service = FlightServiceServer::new(Service::new(door.engine, door.access));
    let mut server = tonic::transport::Server::builder()
        .timeout(timeout)
        .http2_keepalive_interval(Some(door.idle_timeout))
        .http2_keepalive_timeout(Some(door.idle_timeout));
    if let Some(tls) = &door.tls {
        server = server.tls_config(tls.flight())?;
    }
    server
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
}
