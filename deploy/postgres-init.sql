-- One database per service's read models, one for the keyring (data keys live apart from the log).
CREATE DATABASE cdp_ingest;
CREATE DATABASE cdp_identity;
CREATE DATABASE cdp_segments;
CREATE DATABASE cdp_activation;
CREATE DATABASE cdp_governance;
CREATE DATABASE cdp_keyring;
