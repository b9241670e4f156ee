//! The start of the signed-claims pieces: the identity assertion's signer,
//! the webhook routes, and `webhooks.listen`.

use super::*;
use crate::sidecar::webhook::listener::WebhookListener;

impl Parts<'_> {
    /// The identity assertion's signer and its rotation, if configured.
    pub(super) fn start_assertion(&mut self) -> Result<Option<Arc<Assertion>>, AppError> {
        let Some(cfg) = &self.config.assertion else {
            return Ok(None);
        };
        let assertion = Assertion::start(cfg)?;
        let rotate = std::time::Duration::from_secs(cfg.rotate_s);
        let grace = std::time::Duration::from_secs(cfg.grace_s);
        let rotation = assertion
            .clone()
            .rotate_loop(rotate, grace, self.shutdown.clone());
        self.tasks.spawn(rotation);
        Ok(Some(assertion))
    }

    /// The webhook routes (served on the mesh inbound and on
    /// `webhooks.listen`) and their secret watcher.
    pub(super) fn webhook_routes(&mut self) -> Result<Option<Arc<Webhooks>>, AppError> {
        let (Some(cfg), Some(_)) = (&self.config.webhooks, &self.config.inbound) else {
            return Ok(None);
        };
        let webhooks = Webhooks::new(cfg, self.metrics.clone())?;
        self.tasks.spawn(
            webhooks
                .clone()
                .watch_secrets(self.poll, self.shutdown.clone()),
        );
        Ok(Some(webhooks))
    }

    /// `webhooks.listen`, if configured.
    pub(super) async fn start_webhooks(
        &mut self,
        webhooks: Option<Arc<Webhooks>>,
        assertion: Option<Arc<Assertion>>,
    ) -> Result<Option<SocketAddr>, AppError> {
        let (Some(cfg), Some(inbound), Some(webhooks)) =
            (&self.config.webhooks, &self.config.inbound, webhooks)
        else {
            return Ok(None);
        };
        let Some(listen) = cfg.listen else {
            return Ok(None);
        };
        let (listener, addr) = bind_local(listen).await?;
        let tls = match cfg.tls {
            true => Some(webhook_tls(&self.store)?),
            false => None,
        };
        let served = Arc::new(WebhookListener {
            webhooks,
            tls,
            app: inbound.app,
            limits: self.config.limits.clone(),
            assertion,
        })
        .serve(listener, self.drain.clone(), self.connections.clone());
        self.tasks.spawn(served);
        Ok(Some(addr))
    }
}

fn webhook_tls(store: &Arc<CredentialStore>) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    let config = crate::sidecar::webhook::listener::server_config(store)?;
    Ok(tokio_rustls::TlsAcceptor::from(config))
}
