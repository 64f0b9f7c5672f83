//! A connection's handlers: the login (a token as the password), simple and extended queries,
//! the commands a connection answers itself, and the answer's rows.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::http::Method;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::sql::sqlparser::ast;
use datafusion_postgres::arrow_pg::datatypes::df::deserialize_parameters;
use datafusion_postgres::arrow_pg::datatypes::{
    arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type,
};
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, LoginInfo, StartupHandler, finish_authentication,
    protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::DefaultCancelHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, ConnectionHandle, ConnectionManager, PgWireConnectionState,
    PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, ParameterStatus};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use pgwire::types::format::FormatOptions;

use super::SERVER_VERSION;
use super::commands::{Command, error, error_info, reported_as, timeout_millis};
use base64::Engine;

use crate::access::{Access, Denied, scram, scram_salt};
use crate::sql::{Dialect, Request, SqlAnswer, SqlEngine, Statement};

/// A statement as the extended protocol keeps it between Parse and Execute.
#[derive(Debug, Clone)]
pub(crate) enum Prepared {
    /// A query, planned once to type its parameters and its answer; planned again when it runs
    /// (against the publication current then).
    Query {
        statement: Box<ast::Statement>,
        params: Vec<Option<DataType>>,
        schema: SchemaRef,
    },
    Command(Command),
}

/// The handlers of every connection of a door.
#[derive(Debug)]
pub struct Handlers {
    service: Arc<Service>,
    login: Arc<Login>,
    cancel: Arc<DefaultCancelHandler>,
}

impl Handlers {
    pub fn new(engine: SqlEngine, access: Access, connections: Arc<ConnectionManager>) -> Self {
        let service = Arc::new(Service {
            parser: Arc::new(Parser {
                engine,
                sql: PostgresCompatibilityParser::new(),
            }),
        });
        let mut parameters = DefaultServerParameterProvider::default();
        parameters.server_version = SERVER_VERSION.to_owned();
        parameters.default_transaction_read_only = true;
        Self {
            service,
            login: Arc::new(Login {
                access,
                connections: Arc::clone(&connections),
                parameters,
                keys: RandomPidSecretKeyGenerator::default(),
            }),
            cancel: Arc::new(DefaultCancelHandler::new(connections)),
        }
    }

    /// The longest a query may run (the engine's timeout).
    pub fn query_timeout(&self) -> Duration {
        self.service.parser.engine.limits().timeout
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.service)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.service)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.login)
    }

    fn cancel_handler(&self) -> Arc<impl pgwire::api::cancel::CancelHandler> {
        Arc::clone(&self.cancel)
    }
}

/// The login: with tokens configured, the password is a token (any user name), sent in clear
/// only under TLS and proved by SCRAM-SHA-256 otherwise; without tokens, anyone on loopback (the
/// door refuses to listen beyond it, as the HTTP API does).
struct Login {
    access: Access,
    connections: Arc<ConnectionManager>,
    parameters: DefaultServerParameterProvider,
    keys: RandomPidSecretKeyGenerator,
}

impl Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("open", &self.access.is_open())
            .finish_non_exhaustive()
    }
}

impl Login {
    /// Registers the connection for cancel requests and completes the startup.
    async fn admit<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.keys.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.connections.register(pid, secret);
        client
            .session_extensions()
            .insert::<Arc<ConnectionHandle>>(handle);
        client.session_extensions().insert(guard);
        finish_authentication(client, &self.parameters).await
    }
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.access.is_open() {
                    return self.admit(client).await;
                }
                let asked = if client.is_secure() {
                    Authentication::CleartextPassword
                } else if self.access.offers_scram() {
                    Authentication::SASL(vec![SCRAM.to_owned()])
                } else {
                    return Err(refused(
                        "28000",
                        "without TLS a token logs in by SCRAM only, which needs its value \
                         (tokens given by env, not by sha256): connect with sslmode=require",
                    ));
                };
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(asked))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let user = LoginInfo::from_client_info(client)
                    .user()
                    .unwrap_or_default()
                    .to_owned();
                let denied = |user: String| {
                    metrics::counter!("tandem_postgres_refused_total", "reason" => "password")
                        .increment(1);
                    PgWireError::InvalidPassword(user)
                };
                if client.is_secure() {
                    let password = message.into_password()?;
                    return match self.access.decide(
                        &Method::POST,
                        "/v1/sql",
                        Some(&password.password),
                    ) {
                        Ok(_) => self.admit(client).await,
                        Err(Denied::Missing | Denied::Unknown | Denied::Scope { .. }) => {
                            Err(denied(user))
                        }
                    };
                }
                match client.session_extensions().get::<scram::Exchange>() {
                    None => {
                        let initial = message.into_sasl_initial_response()?;
                        if initial.auth_method != SCRAM {
                            return Err(PgWireError::UnsupportedSASLAuthMethod(
                                initial.auth_method,
                            ));
                        }
                        let nonce = base64::engine::general_purpose::STANDARD
                            .encode(rand::random::<[u8; 18]>());
                        let exchange = scram::first(
                            initial.data.as_deref().unwrap_or_default(),
                            &nonce,
                            scram_salt(),
                            scram::ITERATIONS,
                        )
                        .map_err(|e| refused("28000", &e.to_string()))?;
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(
                                    exchange.server_first().as_bytes().to_vec().into(),
                                ),
                            ))
                            .await?;
                        client.session_extensions().insert(exchange);
                        Ok(())
                    }
                    Some(exchange) => {
                        let response = message.into_sasl_response()?;
                        match self.access.decide_scram(&exchange, &response.data) {
                            Ok((token, server_final)) => {
                                tracing::debug!(%user, %token, "PostgreSQL login (SCRAM)");
                                client
                                    .feed(PgWireBackendMessage::Authentication(
                                        Authentication::SASLFinal(server_final.into_bytes().into()),
                                    ))
                                    .await?;
                                self.admit(client).await
                            }
                            Err(_) => Err(denied(user)),
                        }
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

/// The SASL mechanism offered.
const SCRAM: &str = "SCRAM-SHA-256";

/// A fatal login error with `code`.
fn refused(code: &str, message: &str) -> PgWireError {
    let mut info = error(code, message);
    info.severity = "FATAL".into();
    PgWireError::UserError(Box::new(info))
}

/// Queries of every connection.
#[derive(Debug)]
struct Service {
    parser: Arc<Parser>,
}

/// Reads SQL as PostgreSQL clients write it, and types prepared statements.
pub(crate) struct Parser {
    engine: SqlEngine,
    sql: PostgresCompatibilityParser,
}

impl Debug for Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parser").finish_non_exhaustive()
    }
}

fn user_error(info: ErrorInfo) -> PgWireError {
    PgWireError::UserError(Box::new(info))
}

/// The client's `statement_timeout`, if it set one.
fn statement_timeout(client: &impl ClientInfo) -> Option<Duration> {
    let millis = timeout_millis(client.metadata().get("statement_timeout")?)?;
    (millis > 0).then(|| Duration::from_millis(millis))
}

impl Parser {
    fn parse(&self, sql: &str) -> Result<Vec<ast::Statement>, Box<ErrorInfo>> {
        self.sql
            .parse(sql)
            .map_err(|e| Box::new(error("42601", format!("syntax error: {e}"))))
    }

    fn request(&self, client: &impl ClientInfo, statement: Statement) -> Request {
        Request {
            statement,
            dialect: Dialect::Postgres,
            timeout: statement_timeout(client),
        }
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = self.parse(sql).map_err(PgWireError::UserError)?;
        if statements.len() > 1 {
            return Err(user_error(error(
                "42601",
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        if let Some(command) = Command::of(&statement) {
            return Ok(Some(Prepared::Command(command)));
        }
        let statement = Box::new(statement);
        let described = self
            .engine
            .describe(self.request(
                client,
                Statement::Parsed {
                    statement: statement.clone(),
                    params: None,
                },
            ))
            .await
            .map_err(|e| user_error(error_info(&e)))?;
        Ok(Some(Prepared::Query {
            statement,
            params: described.params,
            schema: described.schema,
        }))
    }

    fn get_parameter_types(&self, statement: &Prepared) -> PgWireResult<Vec<Type>> {
        match statement {
            Prepared::Query { params, .. } => params
                .iter()
                .map(|t| t.as_ref().map_or(Ok(Type::UNKNOWN), into_pg_type))
                .collect(),
            Prepared::Command(_) => Ok(Vec::new()),
        }
    }

    fn get_result_schema(
        &self,
        statement: &Prepared,
        format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        match statement {
            Prepared::Query { schema, .. } => {
                arrow_schema_to_pg_fields(schema, format.unwrap_or(&Format::UnifiedText), None)
            }
            Prepared::Command(Command::Show(name)) => Ok(vec![show_field(name)]),
            Prepared::Command(_) => Ok(Vec::new()),
        }
    }
}

fn show_field(name: &str) -> FieldInfo {
    FieldInfo::new(name.to_owned(), None, None, Type::TEXT, FieldFormat::Text)
}

/// The answer's rows, encoded as the client asked (text or binary per column).
fn rows(answer: SqlAnswer, format: &Format, client: &impl ClientInfo) -> PgWireResult<Response> {
    let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let fields = Arc::new(arrow_schema_to_pg_fields(
        &answer.schema,
        format,
        Some(options),
    )?);
    let per_batch = Arc::clone(&fields);
    let rows = answer
        .batches
        .into_iter()
        .flat_map(move |batch| encode_recordbatch(Arc::clone(&per_batch), batch));
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(rows),
    )))
}

/// The value `SHOW name` answers: the client's own setting, else the server's.
fn shown(name: &str, client: &impl ClientInfo) -> Option<String> {
    let metadata = client.metadata();
    let own = metadata
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone());
    own.or_else(|| match name {
        "transaction isolation level" | "transaction_isolation" => Some("read committed".into()),
        "time zone" => Some("UTC".into()),
        "statement_timeout" => Some("0".into()),
        "transaction_read_only" => Some("on".into()),
        _ => crate::sql::pg_catalog::setting(name).map(str::to_owned),
    })
}

/// Answers a command (see [`Command`]).
async fn command<C>(client: &mut C, command: Command) -> PgWireResult<Response>
where
    C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
    C::Error: Debug,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    Ok(match command {
        Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
        Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
        Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
        Command::Nothing(tag) => Response::Execution(Tag::new(tag)),
        Command::Refused(message) => Response::Error(Box::new(error("42501", message))),
        Command::Set { name, value } => {
            if let Some(reported) = reported_as(&name) {
                client
                    .send(PgWireBackendMessage::ParameterStatus(ParameterStatus::new(
                        reported.to_owned(),
                        value.clone(),
                    )))
                    .await?;
            }
            client.metadata_mut().insert(name, value);
            Response::Execution(Tag::new("SET"))
        }
        Command::Show(name) => match shown(&name, client) {
            None => Response::Error(Box::new(error(
                "42704",
                format!("unrecognized configuration parameter \"{name}\""),
            ))),
            Some(value) => {
                let fields = Arc::new(vec![show_field(&name)]);
                let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
                encoder.encode_field(&Some(value))?;
                let row = encoder.take_row();
                Response::Query(QueryResponse::new(fields, futures::stream::iter([Ok(row)])))
            }
        },
    })
}

#[async_trait]
impl SimpleQueryHandler for Service {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let parser = &self.parser;
        let statements = match parser.parse(query) {
            Ok(statements) => statements,
            Err(info) => return Ok(vec![Response::Error(info)]),
        };
        if statements.is_empty() {
            return Ok(vec![Response::EmptyQuery]);
        }
        let mut responses = Vec::with_capacity(statements.len());
        // As PostgreSQL: the statements run in order, and the first error ends the query.
        for statement in statements {
            let response = match Command::of(&statement) {
                Some(c) => command(client, c).await?,
                None => {
                    let request = parser.request(
                        client,
                        Statement::Parsed {
                            statement: Box::new(statement),
                            params: None,
                        },
                    );
                    match parser.engine.answer(request).await {
                        Ok(answer) => rows(answer, &Format::UnifiedText, client)?,
                        Err(e) => Response::Error(Box::new(error_info(&e))),
                    }
                }
            };
            let failed = matches!(response, Response::Error(_));
            responses.push(response);
            if failed {
                break;
            }
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Service {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        Arc::clone(&self.parser)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &portal.statement.statement {
            // In the extended protocol an error makes the connection skip to the next Sync.
            Prepared::Command(c) => match command(client, c.clone()).await? {
                Response::Error(info) => Err(PgWireError::UserError(info)),
                answered => Ok(answered),
            },
            Prepared::Query {
                statement, params, ..
            } => {
                let inferred: Vec<Option<&DataType>> = params.iter().map(Option::as_ref).collect();
                let values = deserialize_parameters(portal, &inferred)?;
                let request = self.parser.request(
                    client,
                    Statement::Parsed {
                        statement: statement.clone(),
                        params: Some(values),
                    },
                );
                match self.parser.engine.answer(request).await {
                    Ok(answer) => rows(answer, &portal.result_column_format, client),
                    Err(e) => Err(user_error(error_info(&e))),
                }
            }
        }
    }
}
