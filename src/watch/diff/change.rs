//! What one diff reports: a [`Change`] per event, each variant holding exactly what its event
//! type carries.

use std::time::SystemTime;

use serde::Serialize;

use crate::watch::versions::Bump;

/// The kind of a change, as in the event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// A tag appeared.
    Added,
    /// A tag moved to a new digest.
    Updated,
    /// A tag disappeared.
    Removed,
    /// A reported tag kept its digest for `mature_after`.
    Matured,
    /// A cosign signature (`sha256-<hex>.sig`) appeared for an image reported before.
    SignatureAdded,
    /// A cosign attestation or SBOM (`.att`, `.sbom`) appeared for an image reported before.
    AttestationAdded,
}

/// One change to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A tag appeared.
    Added {
        /// The tag.
        tag: String,
        /// Its digest, where known.
        digest: Option<String>,
        /// When the registry says it was pushed.
        pushed_at: Option<SystemTime>,
        /// What else is known of the image.
        image: Image,
    },
    /// A tag moved to a new digest.
    Updated {
        /// The tag.
        tag: String,
        /// The digest now.
        digest: String,
        /// The digest before.
        previous_digest: String,
        /// When the registry says it was pushed.
        pushed_at: Option<SystemTime>,
        /// What else is known of the image.
        image: Image,
    },
    /// A reported tag disappeared (`emit_removed`).
    Removed {
        /// The tag.
        tag: String,
        /// The last digest known.
        digest: Option<String>,
    },
    /// A reported tag kept its digest for `mature_after`.
    Matured {
        /// The tag.
        tag: String,
        /// The digest it kept.
        digest: String,
    },
    /// A cosign signature (`sha256-<hex>.sig`) appeared for an image reported before.
    SignatureAdded {
        /// The signature tag.
        tag: String,
        /// The digest it signs.
        subject: String,
        /// The reported tags pointing at the subject, the first [`super::MAX_SUBJECT_TAGS`].
        tags: Vec<String>,
    },
    /// A cosign attestation or SBOM (`.att`, `.sbom`) appeared for an image reported before.
    AttestationAdded {
        /// The attestation tag.
        tag: String,
        /// The digest it attests.
        subject: String,
        /// `att` or `sbom`.
        kind: &'static str,
        /// The reported tags pointing at the subject, the first [`super::MAX_SUBJECT_TAGS`].
        tags: Vec<String>,
    },
}

/// What is known of an added or moved image besides its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    /// The version reading, with `[registry.versions]`; `None` when versions are off.
    pub version: Option<VersionFacts>,
    /// Whether a cosign signature tag for the digest is listed; `None` when the digest is not
    /// known, so nothing can be said.
    pub signed: Option<bool>,
    /// The cosign attestation kinds listed for the digest (`att`, `sbom`), when it is known.
    pub attestations: Option<Vec<&'static str>>,
    /// The image's platforms (`platforms = true`).
    pub platforms: Option<Vec<String>>,
    /// On an update: platforms the new digest has and the previous one lacked, when the
    /// previous digest's were looked up.
    pub platforms_added: Option<Vec<String>>,
}

/// How the version policy read a reported tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionFacts {
    /// The tag is no version (`latest`, `main`).
    NoVersion,
    /// The tag is a version.
    Version {
        /// Normalised (`1.2.3-rc.1`).
        version: String,
        /// Lower-cased; empty for none.
        variant: String,
        /// Relative to what was known before in its variant.
        bump: Bump,
        /// Whether it is now the highest counted version of its variant.
        latest: bool,
        /// For a floating tag: the version of the most specific tag on its digest.
        points_to: Option<String>,
    },
}

impl Change {
    /// What happened.
    pub fn kind(&self) -> ChangeKind {
        match self {
            Change::Added { .. } => ChangeKind::Added,
            Change::Updated { .. } => ChangeKind::Updated,
            Change::Removed { .. } => ChangeKind::Removed,
            Change::Matured { .. } => ChangeKind::Matured,
            Change::SignatureAdded { .. } => ChangeKind::SignatureAdded,
            Change::AttestationAdded { .. } => ChangeKind::AttestationAdded,
        }
    }

    /// The tag.
    pub fn tag(&self) -> &str {
        match self {
            Change::Added { tag, .. }
            | Change::Updated { tag, .. }
            | Change::Removed { tag, .. }
            | Change::Matured { tag, .. }
            | Change::SignatureAdded { tag, .. }
            | Change::AttestationAdded { tag, .. } => tag,
        }
    }

    /// The event's digest: the tag's (for `Removed`, the last known), or a cosign tag's subject.
    pub fn digest(&self) -> Option<&str> {
        match self {
            Change::Added { digest, .. } | Change::Removed { digest, .. } => digest.as_deref(),
            Change::Updated { digest, .. } | Change::Matured { digest, .. } => Some(digest),
            Change::SignatureAdded { subject, .. } | Change::AttestationAdded { subject, .. } => {
                Some(subject)
            }
        }
    }

    /// The digest before an update.
    pub fn previous_digest(&self) -> Option<&str> {
        match self {
            Change::Updated {
                previous_digest, ..
            } => Some(previous_digest),
            _ => None,
        }
    }

    /// When the registry says the image was pushed.
    pub fn pushed_at(&self) -> Option<SystemTime> {
        match self {
            Change::Added { pushed_at, .. } | Change::Updated { pushed_at, .. } => *pushed_at,
            _ => None,
        }
    }

    /// The image of an added or moved tag.
    pub fn image(&self) -> Option<&Image> {
        match self {
            Change::Added { image, .. } | Change::Updated { image, .. } => Some(image),
            _ => None,
        }
    }

    /// The image of an added or moved tag, to annotate.
    pub fn image_mut(&mut self) -> Option<&mut Image> {
        match self {
            Change::Added { image, .. } | Change::Updated { image, .. } => Some(image),
            _ => None,
        }
    }

    /// The event's optional `data` fields.
    pub fn details(&self) -> Details {
        match self {
            Change::Added { image, .. } | Change::Updated { image, .. } => image.details(),
            Change::SignatureAdded { tags, .. } => Details {
                tags: Some(tags.clone()),
                ..Details::default()
            },
            Change::AttestationAdded { kind, tags, .. } => Details {
                attestations: Some(vec![*kind]),
                tags: Some(tags.clone()),
                ..Details::default()
            },
            Change::Removed { .. } | Change::Matured { .. } => Details::default(),
        }
    }
}

impl Image {
    fn details(&self) -> Details {
        let mut details = Details {
            signed: self.signed,
            attestations: self.attestations.clone(),
            platforms: self.platforms.clone(),
            platforms_added: self.platforms_added.clone(),
            ..Details::default()
        };
        match &self.version {
            None => {}
            Some(VersionFacts::NoVersion) => details.version = Some(None),
            Some(VersionFacts::Version {
                version,
                variant,
                bump,
                latest,
                points_to,
            }) => {
                details.version = Some(Some(version.clone()));
                details.variant = Some(variant.clone());
                details.bump = Some(bump.as_str());
                details.latest = Some(*latest);
                details.points_to = points_to.clone();
            }
        }
        details
    }
}

/// The optional fields of an event's `data`, each left out when `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Details {
    /// The normalised version (`[registry.versions]`); `Some(None)` is a null: versions are on and
    /// the tag is not one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Option<String>>,
    /// The version's variant, lower-cased; empty for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// How the version relates to what was known before in its variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bump: Option<&'static str>,
    /// Whether it is now the highest counted version of its variant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latest: Option<bool>,
    /// For a floating tag: the version of the most specific tag on the same digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points_to: Option<String>,
    /// Whether a cosign signature tag for the digest was listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<bool>,
    /// The cosign attestation kinds listed for the digest (`att`, `sbom`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestations: Option<Vec<&'static str>>,
    /// The image's platforms (`platforms = true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms: Option<Vec<String>>,
    /// On an update: platforms the new digest has and the previous one lacked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platforms_added: Option<Vec<String>>,
    /// On a signature or attestation: the tags of the subject digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
}
