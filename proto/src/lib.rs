//! kubelet device plugin API v1beta1.
