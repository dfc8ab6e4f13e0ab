//! [`OrderProcessorBuilder`]: where orders live, the handler, and the settings, checked once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use super::{Engine, OrderProcessor, Work};
use crate::backend::Backend;
use crate::bulk::BulkActions;
use crate::changes::ChangeFeed;
use crate::handler::OrderHandler;
use crate::idempotency::DEFAULT_KEY_TTL;
use crate::memory::{InMemoryBulkActions, InMemoryQueue, InMemoryRepository};
use crate::queue::{Queue, QueueStorage};
use crate::repository::Repository;
use crate::retry::RetryPolicy;
use crate::step::{Pipeline, PipelineError};

/// How many order snapshots a slow [`OrderProcessor::subscribe`] receiver may fall behind.
const EVENT_BUFFER: usize = 1024;
/// The longest lease: a worker renews while it works, so a lease only needs to outlast the
/// pause between two renewals.
const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Why [`OrderProcessorBuilder::build`] refused its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No storage was chosen, or only half of it: a processor needs a repository and a queue,
    /// from [`in_memory`](OrderProcessorBuilder::in_memory),
    /// [`backend`](OrderProcessorBuilder::backend), or both
    /// [`repository`](OrderProcessorBuilder::repository) and
    /// [`queue`](OrderProcessorBuilder::queue). There is no default: orders kept in memory by
    /// mistake are lost at the next restart.
    #[error(
        "no storage chosen: call .in_memory(), .backend(..), or both .repository(..) and .queue(..)"
    )]
    NoStorage,
    /// The queue keeps its state in a repository's storage
    /// ([`QueueStorage::Repository`]), but did not come with its repository from
    /// [`OrderProcessorBuilder::backend`]: paired with another repository it would start orders
    /// that repository does not hold.
    #[error(
        "this queue shares its repository's storage: set both with .backend(..), not with .queue(..)"
    )]
    QueueWithoutItsRepository,
    /// The repository came from a [`backend`](OrderProcessorBuilder::backend) whose queue
    /// shares its storage, and that queue was replaced: the repository would go on queueing
    /// every order it stores for a queue that nobody claims from. For a queue of another kind,
    /// use a repository of its own (`PostgresRepository`,
    /// [`InMemoryRepository`](crate::memory::InMemoryRepository)).
    #[error(
        "this repository keeps its backend's queue in step: replace both with .repository(..) and .queue(..), not the queue alone"
    )]
    RepositoryWithoutItsQueue,
    /// The pipeline's steps are not usable: none, or two with one name.
    #[error("invalid pipeline: {0}")]
    InvalidPipeline(#[from] PipelineError),
    /// A setting is out of range.
    #[error("{setting} {reason}")]
    InvalidSetting {
        /// The builder method's name.
        setting: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Builds an [`OrderProcessor`]; see [`OrderProcessor::builder`].
#[must_use = "a builder does nothing until .build()"]
pub struct OrderProcessorBuilder {
    storage: Storage,
    change_feed: Option<Arc<dyn ChangeFeed>>,
    bulk_actions: Option<Arc<dyn BulkActions>>,
    work: Work,
    settings: Settings,
}

/// Where orders live, as the builder was told: there is no default (`Parts` with neither).
enum Storage {
    /// A repository and its queue, set together by `backend` or `in_memory`.
    Backend {
        repository: Arc<dyn Repository>,
        queue: Arc<dyn Queue>,
    },
    /// A repository and a queue set apart (either may be missing still: `build` refuses).
    Parts {
        repository: Option<Arc<dyn Repository>>,
        queue: Option<Arc<dyn Queue>>,
        /// Whether the repository came from a backend whose queue shares its storage, and so
        /// queues every order it stores for that queue.
        repository_keeps_a_queue: bool,
    },
}

/// The repository and the queue as they are now, and whether the repository keeps a queue.
type Halves = (Option<Arc<dyn Repository>>, Option<Arc<dyn Queue>>, bool);

impl Storage {
    /// Nothing chosen yet.
    const NONE: Storage = Storage::Parts {
        repository: None,
        queue: None,
        repository_keeps_a_queue: false,
    };

    /// The two halves as they are now, and whether the repository keeps a queue of its own.
    fn into_parts(self) -> Halves {
        match self {
            Storage::Backend { repository, queue } => {
                let keeps = queue.storage() == QueueStorage::Repository;
                (Some(repository), Some(queue), keeps)
            }
            Storage::Parts {
                repository,
                queue,
                repository_keeps_a_queue,
            } => (repository, queue, repository_keeps_a_queue),
        }
    }
}

impl std::fmt::Debug for OrderProcessorBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderProcessorBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// The builder's settings; each is documented on its builder method.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settings {
    pub(super) concurrency: usize,
    pub(super) lease: Duration,
    pub(super) retry: RetryPolicy,
    pub(super) poll_interval: Duration,
    pub(super) sweep_interval: Duration,
    pub(super) key_ttl: Duration,
}

impl OrderProcessorBuilder {
    /// Orders and the queue in this process's memory: an
    /// [`InMemoryRepository`](crate::memory::InMemoryRepository) and an
    /// [`InMemoryQueue`](crate::memory::InMemoryQueue). Everything is lost when the process
    /// ends; for tests, demos and work that may be lost.
    pub fn in_memory(self) -> Self {
        self.repository(Arc::new(InMemoryRepository::new()))
            .queue(Arc::new(InMemoryQueue::new()))
    }

    /// The repository, the queue and (if it has one) the change feed of `backend`, in one
    /// call: the way to use a queue that shares its repository's storage, such as
    /// `PostgresBackend`'s or [`InMemoryBackend`](crate::memory::InMemoryBackend)'s.
    pub fn backend(mut self, backend: &dyn Backend) -> Self {
        self.storage = Storage::Backend {
            repository: backend.repository(),
            queue: backend.queue(),
        };
        if let Some(feed) = backend.change_feed() {
            self.change_feed = Some(feed);
        }
        if let Some(bulk) = backend.bulk_actions() {
            self.bulk_actions = Some(bulk);
        }
        self
    }

    /// Where bulk actions ([`OrderProcessor::bulk`]) are kept; by default the
    /// [`backend`](Self::backend)'s, else this process's memory.
    pub fn bulk_actions(mut self, store: Arc<dyn BulkActions>) -> Self {
        self.bulk_actions = Some(store);
        self
    }

    /// Where orders are stored, with [`queue`](Self::queue). Replaces a
    /// [`backend`](Self::backend)'s repository: then its queue must be one of its own
    /// ([`QueueStorage::Own`]), or be replaced too.
    pub fn repository(mut self, repository: Arc<dyn Repository>) -> Self {
        let (_, queue, _) = std::mem::replace(&mut self.storage, Storage::NONE).into_parts();
        self.storage = Storage::Parts {
            repository: Some(repository),
            queue,
            repository_keeps_a_queue: false,
        };
        self
    }

    /// The work queue, with [`repository`](Self::repository). It must keep ids of its own
    /// ([`QueueStorage::Own`]): a queue that shares its repository's storage comes with it,
    /// from [`backend`](Self::backend), and that repository goes with it (replace both).
    pub fn queue(mut self, queue: Arc<dyn Queue>) -> Self {
        let (repository, _, repository_keeps_a_queue) =
            std::mem::replace(&mut self.storage, Storage::NONE).into_parts();
        self.storage = Storage::Parts {
            repository,
            queue: Some(queue),
            repository_keeps_a_queue,
        };
        self
    }

    /// How [`OrderProcessor::watch`] hears of changes made by other processes that share the
    /// repository (on PostgreSQL, a [`PostgresChangeFeed`](crate::postgres::PostgresChangeFeed)).
    /// Unset, watchers hear of this processor's own changes at once and re-read the order every
    /// `poll_interval` for the rest.
    pub fn change_feed(mut self, feed: Arc<dyn ChangeFeed>) -> Self {
        self.change_feed = Some(feed);
        self
    }

    /// How many orders may be in the handler at once (tasks, not threads); 64 unless set.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.settings.concurrency = concurrency;
        self
    }

    /// How long a worker holds an order before another may take it over, unless renewed (the
    /// worker renews every third of it while the handler runs); 10 s unless set, at most an
    /// hour. A crashed worker's orders are picked up again about this long after it died.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How failed attempts are retried; [`RetryPolicy::default`] unless set.
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.settings.retry = retry;
        self
    }

    /// The longest an idle worker waits before looking at the queue again, for queues whose
    /// wake-ups can be missed; 1 s unless set.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.settings.poll_interval = interval;
        self
    }

    /// How often the recovery sweep re-queues orders a queue may have lost (it also runs at
    /// start); 30 s unless set.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.settings.sweep_interval = interval;
        self
    }

    /// How long an idempotency key is remembered after its submission; 24 h unless set, at
    /// least a second. Expired keys are forgotten by the recovery sweep (and then a
    /// submission with the key creates a new order).
    pub fn idempotency_ttl(mut self, ttl: Duration) -> Self {
        self.settings.key_ttl = ttl;
        self
    }

    /// Checks the settings and builds the processor; nothing runs until
    /// [`OrderProcessor::start`].
    pub fn build(self) -> Result<OrderProcessor, BuildError> {
        let s = self.settings;
        let invalid = |setting, reason| Err(BuildError::InvalidSetting { setting, reason });
        if s.concurrency == 0 {
            return invalid("concurrency", "must be at least 1");
        }
        if s.lease < Duration::from_millis(10) || s.lease > MAX_LEASE {
            return invalid("lease", "must be from 10 ms to 1 hour");
        }
        if s.retry.max_attempts == 0 {
            return invalid("retry_policy", "max_attempts must be at least 1");
        }
        if !(s.retry.multiplier.is_finite() && s.retry.multiplier >= 1.0) {
            return invalid("retry_policy", "multiplier must be a finite number >= 1");
        }
        if s.retry.max_backoff > Duration::from_secs(30 * 24 * 3600) {
            return invalid("retry_policy", "max_backoff must be at most 30 days");
        }
        if s.poll_interval.is_zero() || s.poll_interval > Duration::from_secs(3600) {
            return invalid("poll_interval", "must be more than zero and at most 1 hour");
        }
        if s.sweep_interval.is_zero() || s.sweep_interval > Duration::from_secs(24 * 3600) {
            return invalid("sweep_interval", "must be more than zero and at most 1 day");
        }
        if s.key_ttl < Duration::from_secs(1) {
            return invalid("idempotency_ttl", "must be at least 1 second");
        }
        if let Work::Pipeline(pipeline) = &self.work {
            pipeline.validate()?;
        }
        let from_one_backend = matches!(self.storage, Storage::Backend { .. });
        let (Some(repository), Some(queue), repository_keeps_a_queue) = self.storage.into_parts()
        else {
            return Err(BuildError::NoStorage);
        };
        let shared_storage = queue.storage() == QueueStorage::Repository;
        if shared_storage && !from_one_backend {
            return Err(BuildError::QueueWithoutItsRepository);
        }
        if repository_keeps_a_queue && !from_one_backend {
            return Err(BuildError::RepositoryWithoutItsQueue);
        }
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let bulk = self
            .bulk_actions
            .unwrap_or_else(|| Arc::new(InMemoryBulkActions::new(repository.clone())));
        Ok(OrderProcessor {
            engine: Arc::new(Engine {
                bulk,
                bulk_accepted: tokio::sync::Notify::new(),
                repository,
                queue,
                shared_storage,
                work: self.work,
                settings: s,
                events,
                change_feed: self.change_feed,
                watchers: Arc::default(),
            }),
        })
    }
}

impl OrderProcessor {
    /// A builder around the embedding service's processing step, with 64 concurrent orders,
    /// a 10 s lease and [`RetryPolicy::default`] until told otherwise. Where orders live has
    /// no default: choose it with [`in_memory`](OrderProcessorBuilder::in_memory),
    /// [`backend`](OrderProcessorBuilder::backend), or
    /// [`repository`](OrderProcessorBuilder::repository) and
    /// [`queue`](OrderProcessorBuilder::queue).
    pub fn builder(handler: impl OrderHandler + 'static) -> OrderProcessorBuilder {
        Self::builder_for(Work::Handler(Arc::new(handler)))
    }

    /// A builder that processes each order as the steps of `pipeline`, checkpointed and
    /// compensated (see [`step`](crate::step)); otherwise as [`builder`](Self::builder). Each
    /// step's attempts are capped by its own [`RetryPolicy`], or by the processor's.
    pub fn pipeline_builder(pipeline: Pipeline) -> OrderProcessorBuilder {
        Self::builder_for(Work::Pipeline(Arc::new(pipeline)))
    }

    fn builder_for(work: Work) -> OrderProcessorBuilder {
        OrderProcessorBuilder {
            storage: Storage::NONE,
            change_feed: None,
            bulk_actions: None,
            work,
            settings: Settings {
                concurrency: 64,
                lease: Duration::from_secs(10),
                retry: RetryPolicy::default(),
                poll_interval: Duration::from_secs(1),
                sweep_interval: Duration::from_secs(30),
                key_ttl: DEFAULT_KEY_TTL,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::handler::SimulatedStep;
    use crate::memory::InMemoryBackend;

    fn builder() -> OrderProcessorBuilder {
        OrderProcessor::builder(SimulatedStep::new(Duration::ZERO))
    }

    #[test]
    fn storage_has_no_default() {
        assert_eq!(builder().build().unwrap_err(), BuildError::NoStorage);
        let only_a_repository = builder().repository(Arc::new(InMemoryRepository::new()));
        assert_eq!(
            only_a_repository.build().unwrap_err(),
            BuildError::NoStorage
        );
        let only_a_queue = builder().queue(Arc::new(InMemoryQueue::new()));
        assert_eq!(only_a_queue.build().unwrap_err(), BuildError::NoStorage);
        assert!(builder().in_memory().build().is_ok());
        assert!(builder().backend(&InMemoryBackend::new()).build().is_ok());
    }
}
